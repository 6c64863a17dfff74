"""The config sections of ``crossmodal train-teacher`` and ``crossmodal distill`` (see experiments/configs/).

:class:`RunConfig` is what every run of the training engine reads (seed, device, data, optimiser, schedule,
loop); :class:`TeacherRunConfig` and :class:`DistillRunConfig` add each verb's own sections. Field order is the
YAML's key order (config.yaml is written in it) and the order unknown-key errors list the known keys in.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Any, Mapping, Optional, Sequence, TypeVar

from crossmodal.config.generate_rule import apply_generate_rule
from crossmodal.config.schema import load_config
from crossmodal.config.typed import Section, non_negative_setting, positive_setting, section, setting

R = TypeVar("R", bound="RunConfig")

ENCODER_HELP = "timm encoder options: name, in_chans (default: the modality's), num_classes, small_input, ..."
ADAPT_INPUT_HELP = ("initialise from weights with another input-channel count (ImageNet RGB weights for a depth "
                    "encoder): their first convolution is adapted as timm's adapt_input_conv does, and said on "
                    "stderr; false: such weights are an error")


@dataclass(frozen=True, kw_only=True)
class DataSection(Section):
    path: str = setting("path", help="the paired .h5 file")
    generate: Optional[dict[str, Any]] = setting(
        "mapping", None, nullable=True,
        help="synthetic generator options ({num, size, seed}); the file is generated when absent")
    split: str = setting("str", "train", help="the transfer / training split")
    eval_split: Optional[str] = setting("str", "test", nullable=True,
                                        help="split evaluated after each epoch (null: none)")
    size: Optional[list[int]] = setting("list:int", None, nullable=True, check=(lambda v: v > 0, "positive sizes"),
                                        help="(height, width) the samples are resized or cropped to; null keeps "
                                             "the stored size")
    augment: bool = setting("bool", False, help="random resized crop, flip and colour jitter (paired geometry)")
    scale: list[float] = setting("list:float", [0.2, 1.0], help="area range of the random resized crop")
    color_jitter: float = non_negative_setting("float", 0.4, help="colour jitter strength when augmenting")
    num_workers: int = non_negative_setting("int", 0, help="DataLoader worker processes per training process")
    loader: str = setting("str", "workers", choices=("workers", "device"),
                          help="workers: a DataLoader reads and augments each sample on the CPU; device: the "
                               "split is loaded once into the training device's memory and augmented there "
                               "per batch (data sets that fit; num_workers is then unused)")


@dataclass(frozen=True, kw_only=True)
class OptimSection(Section):
    name: str = setting("str", "sgd", choices=("sgd", "adamw"))
    lr: float = positive_setting("float", 0.05,
                                 help="peak learning rate, used as given whatever the batch or world size")
    momentum: float = non_negative_setting("float", 0.9)
    nesterov: bool = setting("bool", False)
    weight_decay: float = non_negative_setting("float", 5e-4)
    betas: list[float] = setting("list:float", [0.9, 0.999])


@dataclass(frozen=True, kw_only=True)
class ScheduleSection(Section):
    name: str = setting("str", "cosine", choices=("cosine", "step", "constant"))
    warmup_epochs: float = non_negative_setting("float", 0.0, help="linear warm-up from 0, in (fractional) epochs")
    milestones: list[int] = setting("list:int", [], help="epochs at which 'step' multiplies the rate by gamma")
    gamma: float = positive_setting("float", 0.1)
    min_lr: float = non_negative_setting("float", 0.0, help="the cosine schedule's final rate")


@dataclass(frozen=True, kw_only=True)
class TrainSection(Section):
    epochs: int = positive_setting("int", help="number of epochs")
    batch_size: int = positive_setting("int", 64,
                                       help="samples per step per process (global batch = this x processes)")
    bf16: bool = setting("bool", False, help="bfloat16 autocast of the forward passes")
    channels_last: bool = setting("bool", False, help="channels-last memory format for the student and inputs")
    clip_grad_norm: Optional[float] = positive_setting("float", None, nullable=True,
                                                       help="clip the gradients' global norm")
    log_every: int = positive_setting("int", 10, help="steps between metric records")
    checkpoint_every_steps: Optional[int] = positive_setting(
        "int", None, nullable=True, help="also checkpoint every this many steps (always: every epoch)")
    eval_every: int = positive_setting("int", 1, help="epochs between evaluations on data.eval_split")
    progress: bool = setting("bool", True, help="tqdm progress bars")
    tensorboard: bool = setting("bool", True, help="TensorBoard events of the metrics, config and pictures, when "
                                                   "the tensorboard package is installed")
    logdir: Optional[str] = setting("path", None, nullable=True,
                                    help="the folder of the TensorBoard events (default: RUN_DIR/tb); one per run")


@dataclass(frozen=True, kw_only=True)
class RunConfig(Section):
    """What the training engine reads; every training verb's config extends it."""

    seed: int = setting("int", 0, check=(lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
                        help="seed of model initialisation, data order, augmentation and every sampler")
    deterministic: bool = setting("bool", False, help="deterministic algorithms (slower on GPU)")
    device: str = setting("str", "auto", help="auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda, cuda:N")
    data: DataSection = section(DataSection)
    optim: OptimSection = section(OptimSection)
    schedule: ScheduleSection = section(ScheduleSection)
    train: TrainSection = section(TrainSection)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike | None, overrides: Sequence[str] = (),
             base: Mapping[str, Any] | None = None) -> R:
        """:meth:`Section.load`, with the rule of :mod:`crossmodal.config.generate_rule`: a ``data.generate``
        written in a file applies only to the ``data.path`` written beside it."""
        tree = load_config(path, cls.schema(), overrides, base)
        apply_generate_rule(tree, path, overrides, base)
        return cls.from_tree(tree)


# ------------------------------------------------------------------------------------------------ train-teacher
@dataclass(frozen=True, kw_only=True)
class ModelSection(Section):
    modality: str = setting("str", help="the input modality, e.g. rgb or lab_l")
    encoder: dict[str, Any] = setting("mapping", help=ENCODER_HELP)
    weights: Optional[str] = setting("path", None, nullable=True, help="initial weights (a local file)")
    adapt_input: bool = setting("bool", False, help=ADAPT_INPUT_HELP)


@dataclass(frozen=True, kw_only=True)
class TaskSection(Section):
    classes: Optional[str] = setting("str", None, nullable=True, help="image-level class label set to train on")
    class_subset: Optional[list[str]] = setting(
        "list:str", None, nullable=True,
        help="train on these classes of task.classes only (class names): the other classes' samples are left "
             "out of training and evaluation, and the classifier's outputs follow this order")
    segmentation: Optional[str] = setting("str", None, nullable=True, help="segmentation label set to train on")
    segmentation_weight: float = non_negative_setting("float", 1.0)
    decoder_channels: int = positive_setting("int", 64, help="width of the segmentation decoder")


@dataclass(frozen=True, kw_only=True)
class TeacherRunConfig(RunConfig):
    """``crossmodal train-teacher``."""

    model: ModelSection = section(ModelSection)
    task: TaskSection = section(TaskSection)


# ------------------------------------------------------------------------------------------------ distill
@dataclass(frozen=True, kw_only=True)
class TeacherSection(Section):
    modality: Optional[str] = setting(
        "str", None, nullable=True,
        help="the teacher's modality, e.g. rgb; may be omitted when weights is a train-teacher or import-teacher "
             "folder (its model card's modality)")
    encoder: Optional[dict[str, Any]] = setting(
        "mapping", None, nullable=True,
        help=ENCODER_HELP + "; may be omitted when weights is a train-teacher or import-teacher folder (the keys "
             "it does not set come from its model card)")
    weights: Optional[str] = setting(
        "path", None, nullable=True,
        help="a weight file, or a train-teacher or import-teacher folder; null: random teacher (smoke tests)")
    adapt_input: bool = setting("bool", False, help=ADAPT_INPUT_HELP)
    cache: Any = setting("auto_bool", "auto",
                         help="teacher-feature cache: true, false, or auto (used when the data are not augmented)")
    cache_path: Optional[str] = setting("path", None, nullable=True, help="default: RUN_DIR/teacher_cache.h5")
    cache_dtype: str = setting("str", "float32", choices=("float32", "float16"))


@dataclass(frozen=True, kw_only=True)
class StudentSection(Section):
    modality: str = setting("str", help="the student's modality, e.g. depth")
    encoder: dict[str, Any] = setting("mapping", help=ENCODER_HELP)
    weights: Optional[str] = setting("path", None, nullable=True, help="initial weights (a local file)")
    adapt_input: bool = setting("bool", False, help=ADAPT_INPUT_HELP)


@dataclass(frozen=True, kw_only=True)
class LossSection(Section):
    ce: float = non_negative_setting("float", 0.0, help="weight of cross-entropy with data.class_labels")
    kd: float = non_negative_setting("float", 0.0, help="weight of KD on the logits (options: distill.options.kd)")
    class_labels: Optional[str] = setting("str", None, nullable=True,
                                          help="class label set for ce and for distillers that use labels")


@dataclass(frozen=True, kw_only=True)
class DistillSection(Section):
    name: list[str] = setting("list:str", [], help="distiller name(s) from --list-distillers; [] for ce/kd only")
    weights: dict[str, Any] = setting("mapping", {}, help="weight per distiller name (default: the distiller's own)")
    options: dict[str, Any] = setting("mapping", {},
                                      help="options per distiller name, used when that distiller is named")


@dataclass(frozen=True, kw_only=True)
class DistillRunConfig(RunConfig):
    """``crossmodal distill``."""

    teacher: TeacherSection = section(TeacherSection)
    student: StudentSection = section(StudentSection)
    loss: LossSection = section(LossSection)
    distill: DistillSection = section(DistillSection)


CONFIGS: dict[str, type[RunConfig]] = {"train-teacher": TeacherRunConfig, "distill": DistillRunConfig}
SCHEMAS = {verb: cls.schema() for verb, cls in CONFIGS.items()}
COMMON = RunConfig.schema()

# Keys a resumed run may change: they affect speed and output, never the numbers (not data.loader: the device
# loader draws its augmentation from its own hash, so switching it mid-run changes the batches).
RESUME_MAY_CHANGE = ("device", "data.num_workers", "train.progress", "train.log_every",
                     "train.checkpoint_every_steps", "train.tensorboard")
