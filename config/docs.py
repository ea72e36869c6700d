"""Print the README's configuration table from the settings' field descriptions.

python -m config.docs
"""

from __future__ import annotations

from config.settings import Settings


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "computed" if field.default_factory is not None else repr(field.default)
        rows.append(f"| `MLWORKER_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
