from tests.desk.conftest import parked_intake, start_intake  # noqa: F401 - shared fixtures
