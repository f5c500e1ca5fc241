"""The API's routers, one per group of endpoints; :func:`tridentcore.server.app.create_app`
includes them. Routes read the app's state through the dependencies in :mod:`.deps` and raise
:class:`~tridentcore.server.errors.ApiError`; the status mapping lives in ``server/errors.py``."""
