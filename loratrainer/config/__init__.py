"""The settings: the schema (one place each setting exists), its field catalogue, our JSON files, the Kohya GUI
import/export and presets.

Inside the package imports point one way, each module only to those before it:
optimizer_table, foreign_paths (leaves) <- schema <- fields <- files <- kohya_gui_keys <- kohya <- presets.
The package itself is the schema, its field catalogue and our JSON files (`from loratrainer.config import
TrainingConfig, field_specs, load_config`); the Kohya import/export and presets are `loratrainer.config.kohya`
and `loratrainer.config.presets`.
"""

from loratrainer.config.schema import (  # noqa: F401
    GROUPS,
    KNOWN_OPTIMIZERS,
    LYCORIS_TYPES,
    SCHEMA_VERSION,
    BucketSettings,
    DatasetSettings,
    FolderSettings,
    LaunchSettings,
    LossSettings,
    MetadataSettings,
    ModelSettings,
    NetworkSettings,
    NoiseSettings,
    OptimizerSettings,
    Precision,
    PrecisionSettings,
    Sampler,
    SamplingSettings,
    SavePrecision,
    SavingSettings,
    Scheduler,
    TrainingConfig,
    TrainingSettings,
    parse_optimizer_args,
    ui,
)
from loratrainer.config.fields import FieldSpec, apply_overrides, field_specs, get_value, resolve_key, with_values  # noqa: F401
from loratrainer.config.files import (  # noqa: F401
    MAX_CONFIG_BYTES,
    MIGRATIONS,
    PRESET_HEADER,
    ConfigError,
    Migration,
    config_from_dict,
    config_to_json,
    describe_validation_error,
    load_config,
    migrate,
    read_json_object,
    save_config,
)
