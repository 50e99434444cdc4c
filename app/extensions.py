"""Flask extensions, created unbound here and bound to an app in `create_app`."""

from flask_jwt_extended import JWTManager

jwt = JWTManager()
