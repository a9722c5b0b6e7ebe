"""What both shipped order definitions share: their parameters (JSON schema properties).

The demo shop's generator (``devtools/demo_data.py``) fills its tables with these statuses.
"""

from __future__ import annotations

ORDER_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled", "returned")
ORDER_PARAMS = {
    "since": {
        "type": "string",
        "format": "date",
        "title": "Created on or after",
        "description": "First creation date included (YYYY-MM-DD).",
    },
    "until": {
        "type": "string",
        "format": "date",
        "title": "Created on or before",
        "description": "Last creation date included (YYYY-MM-DD).",
    },
    "status": {
        "type": "string",
        "enum": list(ORDER_STATUSES),
        "title": "Order status",
        "description": "Only orders in this status.",
    },
}
