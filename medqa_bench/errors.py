"""Typed errors. Each message says what is wrong and what to do about it; the CLI prints it on one line."""


class MedQABenchError(Exception):
    """Base class: every error the CLI turns into a one-line message and exit status 2."""


class DataError(MedQABenchError):
    """A dataset that cannot be read, is empty, or lacks the columns it needs."""


class ModelError(MedQABenchError):
    """A model reference that resolves to nothing, or a weight file that cannot be loaded."""


class AdapterError(MedQABenchError):
    """An adapter folder that is missing, made for another base, or does not change the model."""


class SpecError(MedQABenchError):
    """A run spec, recipe or command-line option with an invalid value."""


class MetricError(MedQABenchError):
    """An unknown metric, or a metric (often a plugin) that failed or returned bad scores."""


class RunError(MedQABenchError):
    """A run folder that is missing, incomplete or incompatible with the request."""


class BackendError(MedQABenchError):
    """An unknown inference backend, or one that cannot do what the run asks of it."""
