"""Pure logic shared by the exchange service and the operator (no framework imports)."""
