"""Error types for bad input: each message says what is wrong and where."""


class SumloraError(Exception):
    """Bad input (params, data, model); the message names the file, line, field or param."""


class ParamsError(SumloraError, ValueError):
    """params.yaml is invalid; the message lists every problem with its key path."""


class DataError(SumloraError, ValueError):
    """Bad input data; the message names file, line and field."""


class ModelError(SumloraError, RuntimeError):
    """A model or adapter could not be found or loaded; the message says which and why."""
