"""The config schemas of ``crossmodal train-teacher`` and ``crossmodal distill`` (see experiments/configs/)."""
from __future__ import annotations

from crossmodal.train.config import Field, non_negative, positive

COMMON = {
    "seed": Field("int", 0, check=(lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
                  help="seed of model initialisation, data order, augmentation and every sampler"),
    "deterministic": Field("bool", False, help="deterministic algorithms (slower on GPU)"),
    "device": Field("str", "auto", help="auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda, cuda:N"),
    "data": {
        "path": Field("path", help="the paired .h5 file"),
        "generate": Field("mapping", None, nullable=True,
                          help="synthetic generator options ({num, size, seed}); the file is generated when absent"),
        "split": Field("str", "train", help="the transfer / training split"),
        "eval_split": Field("str", "test", nullable=True, help="split evaluated after each epoch (null: none)"),
        "size": Field("list:int", None, nullable=True, check=(lambda v: v > 0, "positive sizes"),
                      help="(height, width) the samples are resized or cropped to; null keeps the stored size"),
        "augment": Field("bool", False, help="random resized crop, flip and colour jitter (paired geometry)"),
        "scale": Field("list:float", [0.2, 1.0], help="area range of the random resized crop"),
        "color_jitter": non_negative("float", 0.4, help="colour jitter strength when augmenting"),
        "num_workers": non_negative("int", 0, help="DataLoader worker processes per training process"),
    },
    "optim": {
        "name": Field("str", "sgd", choices=("sgd", "adamw")),
        "lr": positive("float", 0.05, help="peak learning rate, used as given whatever the batch or world size"),
        "momentum": non_negative("float", 0.9),
        "nesterov": Field("bool", False),
        "weight_decay": non_negative("float", 5e-4),
        "betas": Field("list:float", [0.9, 0.999]),
    },
    "schedule": {
        "name": Field("str", "cosine", choices=("cosine", "step", "constant")),
        "warmup_epochs": non_negative("float", 0.0, help="linear warm-up from 0, in (fractional) epochs"),
        "milestones": Field("list:int", [], help="epochs at which 'step' multiplies the rate by gamma"),
        "gamma": positive("float", 0.1),
        "min_lr": non_negative("float", 0.0, help="the cosine schedule's final rate"),
    },
    "train": {
        "epochs": positive("int", help="number of epochs"),
        "batch_size": positive("int", 64, help="samples per step per process (global batch = this x processes)"),
        "bf16": Field("bool", False, help="bfloat16 autocast of the forward passes"),
        "channels_last": Field("bool", False, help="channels-last memory format for the student and inputs"),
        "clip_grad_norm": positive("float", None, nullable=True, help="clip the gradients' global norm"),
        "log_every": positive("int", 10, help="steps between metric records"),
        "checkpoint_every_steps": positive("int", None, nullable=True,
                                           help="also checkpoint every this many steps (always: every epoch)"),
        "eval_every": positive("int", 1, help="epochs between evaluations on data.eval_split"),
        "progress": Field("bool", True, help="tqdm progress bars"),
    },
}

ENCODER_HELP = "timm encoder options: name, in_chans (default: the modality's), num_classes, small_input, ..."

TRAIN_TEACHER = {
    **COMMON,
    "model": {
        "modality": Field("str", help="the input modality, e.g. rgb or lab_l"),
        "encoder": Field("mapping", help=ENCODER_HELP),
        "weights": Field("path", None, nullable=True, help="initial weights (a local file)"),
    },
    "task": {
        "classes": Field("str", None, nullable=True, help="image-level class label set to train on"),
        "class_subset": Field("list:str", None, nullable=True,
                              help="train on these classes of task.classes only (class names): the other "
                                   "classes' samples are left out of training and evaluation, and the "
                                   "classifier's outputs follow this order"),
        "segmentation": Field("str", None, nullable=True, help="segmentation label set to train on"),
        "segmentation_weight": non_negative("float", 1.0),
        "decoder_channels": positive("int", 64, help="width of the segmentation decoder"),
    },
}

DISTILL = {
    **COMMON,
    "teacher": {
        "modality": Field("str", help="the teacher's modality, e.g. rgb"),
        "encoder": Field("mapping", None, nullable=True,
                         help=ENCODER_HELP + "; may be omitted when weights is a train-teacher run folder"),
        "weights": Field("path", None, nullable=True,
                         help="a weight file or a train-teacher run folder; null: random teacher (smoke tests)"),
        "cache": Field("auto_bool", "auto",
                       help="teacher-feature cache: true, false, or auto (used when the data are not augmented)"),
        "cache_path": Field("path", None, nullable=True, help="default: RUN_DIR/teacher_cache.h5"),
        "cache_dtype": Field("str", "float32", choices=("float32", "float16")),
    },
    "student": {
        "modality": Field("str", help="the student's modality, e.g. depth"),
        "encoder": Field("mapping", help=ENCODER_HELP),
        "weights": Field("path", None, nullable=True, help="initial weights (a local file)"),
    },
    "loss": {
        "ce": non_negative("float", 0.0, help="weight of cross-entropy with data.class_labels"),
        "kd": non_negative("float", 0.0, help="weight of KD on the logits (options: distill.options.kd)"),
        "class_labels": Field("str", None, nullable=True,
                              help="class label set for ce and for distillers that use labels"),
    },
    "distill": {
        "name": Field("list:str", [], help="distiller name(s) from --list-distillers; [] for ce/kd only"),
        "weights": Field("mapping", {}, help="weight per distiller name (default: the distiller's own)"),
        "options": Field("mapping", {}, help="options per distiller name, used when that distiller is named"),
    },
}

SCHEMAS = {"train-teacher": TRAIN_TEACHER, "distill": DISTILL}

# Keys a resumed run may change: they affect speed and output, never the numbers.
RESUME_MAY_CHANGE = ("device", "data.num_workers", "train.progress", "train.log_every",
                     "train.checkpoint_every_steps")
