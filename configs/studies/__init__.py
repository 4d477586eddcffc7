"""The paper's studies, one config each: ``get_config("cpu")`` or ``get_config("paper")``."""
