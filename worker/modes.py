"""How a job ran: ``normal``, or ``lightweight`` when the memory guard scaled it down."""

from __future__ import annotations

from typing import Literal

Mode = Literal["normal", "lightweight"]
