"""Extensions, created unbound here and bound to an app in `create_app`."""

from flask_cors import CORS

from app.auth import StrictJWTManager
from app.db import Database

jwt = StrictJWTManager()
db = Database()
cors = CORS()
