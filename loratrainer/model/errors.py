"""What can go wrong with a model or LoRA file, as messages a user can act on (all are UserErrors)."""

from loratrainer.errors import UserError


class ModelFileMissing(UserError):
    """A model, VAE or LoRA path that does not exist."""


class NotSD15Checkpoint(UserError):
    """A readable checkpoint of another family (SDXL, SD2, SD3, a LoRA, a lone VAE, ...)."""


class CorruptModelFile(UserError):
    """A file that cannot be read as a checkpoint: truncated download, random bytes, wrong extension."""


class ModelNotAvailableOffline(UserError):
    """A hub id was given but the hub cannot be reached (or HF_HUB_OFFLINE is set) and nothing is cached."""


class NetworkWeightsMismatch(UserError):
    """network_weights does not fit the LoRA being trained (other rank, alpha, modules or shapes)."""


class NonFiniteLoraError(UserError):
    """A LoRA tensor holds NaN or infinity; the file is not written (it would load as a black image)."""


class OutputExists(UserError):
    """The LoRA file exists and overwriting was not asked for."""
