"""hashkd search service: a FastAPI app over hashkd encoders and indexes binary indexes.

>>> from service import Settings, create_app
>>> app = create_app(Settings(model="student/", database_model="teacher/", store="store/"))
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
