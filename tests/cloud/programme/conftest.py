from tests.cloud.api.conftest import api_settings, auth, client, conn  # noqa: F401  (the API's fixtures, reused)
