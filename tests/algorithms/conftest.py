from tests._threads import one_thread  # noqa: F401  (autouse)
