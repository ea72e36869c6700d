"""Regenerate the vendored JSON schemas in this folder (run by hand, never by the tests).

The tests validate offline, so the schemas live here. Sources, all from PyPI:

- ``compose-spec.json``: copied from check-jsonschema 0.39.0 (``builtin_schemas/vendor``).
- ``k8s-v1.37-strict.json``: the Kubernetes 1.37 "local-strict" schemas shipped in
  kubernetes-validate 1.37.0, cut down to the kinds ``deploy/k8s`` uses plus the ``$defs``
  they reach (the full ``_definitions.json`` is 1.8 MB).
- ``keda-v1alpha1.json``: ScaledObject and TriggerAuthentication as generated from KEDA's
  CRDs by cloudcoil-models-keda 2.16.1.0 (pydantic ``model_json_schema``), tightened with
  ``additionalProperties: false`` on every object so a misspelt key fails as it would
  against the CRD's structural schema.

Usage: ``pip download --no-deps check-jsonschema==0.39.0 kubernetes-validate==1.37.0``,
unzip both, ``pip install --target DIR cloudcoil cloudcoil-models-keda==2.16.1.0``, then
``PYTHONPATH=DIR python tests/schemas/vendor_schemas.py CHECK_JSONSCHEMA_DIR K8S_VALIDATE_DIR``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
#: (file in kubernetes-validate, apiVersion, kind) for every kind deploy/k8s may use
K8S_KINDS = [
    ("deployment-apps-v1.json", "apps/v1", "Deployment"),
    ("statefulset-apps-v1.json", "apps/v1", "StatefulSet"),
    ("service-v1.json", "v1", "Service"),
    ("secret-v1.json", "v1", "Secret"),
    ("configmap-v1.json", "v1", "ConfigMap"),
    ("namespace-v1.json", "v1", "Namespace"),
]
REF = re.compile(r'"\$ref": "(?:/api/_definitions\.json)?#/\$defs/([^"]+)"')


def _closure(start: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """Every definition reachable from ``start``."""
    wanted: dict[str, Any] = {}
    todo = REF.findall(json.dumps(start))
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted[name] = defs[name]
            todo.extend(REF.findall(json.dumps(defs[name])))
    return wanted


def vendor_k8s(root: Path) -> None:
    base = root / "kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict"
    defs = json.loads((base / "_definitions.json").read_text())["$defs"]
    kinds = {}
    for filename, api_version, kind in K8S_KINDS:
        text = (base / filename).read_text().replace("/api/_definitions.json#", "#")
        kinds[f"{api_version}/{kind}"] = json.loads(text)
    bundle = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "Kubernetes 1.37 strict schemas (kubernetes-validate 1.37.0), by kind.",
        "kinds": kinds,
        "$defs": _closure(kinds, defs),
    }
    (HERE / "k8s-v1.37-strict.json").write_text(json.dumps(bundle, indent=1, sort_keys=True))


def _forbid_extra(node: Any) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_extra(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_extra(value)


def vendor_keda() -> None:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

    kinds = {}
    for model in (ScaledObject, TriggerAuthentication):
        schema = model.model_json_schema(by_alias=True, mode="validation")
        _forbid_extra(schema)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        kinds[f"keda.sh/v1alpha1/{model.__name__}"] = schema
    doc = {"description": "KEDA v1alpha1 (cloudcoil-models-keda 2.16.1.0).", "kinds": kinds}
    (HERE / "keda-v1alpha1.json").write_text(json.dumps(doc, indent=1, sort_keys=True))


def main(check_jsonschema_root: str, k8s_validate_root: str) -> None:
    vendor = Path(check_jsonschema_root) / "check_jsonschema/builtin_schemas/vendor"
    shutil.copy(vendor / "compose-spec.json", HERE / "compose-spec.json")
    shutil.copy(vendor / "licenses/LICENSE.compose-spec", HERE / "LICENSE.compose-spec")
    vendor_k8s(Path(k8s_validate_root))
    vendor_keda()


if __name__ == "__main__":
    main(*sys.argv[1:3])
