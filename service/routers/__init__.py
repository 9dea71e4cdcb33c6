"""One APIRouter per resource: search, items, ops (info/health/metrics) and the web page."""
