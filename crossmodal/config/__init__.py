"""Configs: YAML (``yaml.safe_load`` only) and ``key.sub=value`` overrides, checked, loaded into typed sections.

:mod:`crossmodal.config.schema` checks a nested dict against a schema of :class:`Field` (one-line errors naming
the file and the key); :mod:`crossmodal.config.typed` turns dataclasses into such schemas and the checked dict
into objects; :mod:`crossmodal.config.sections` declares the training verbs' sections.
"""
from crossmodal.config.schema import (Field, dump_config, flatten, load_config, non_negative, parse_override,
                                      positive, read_yaml, validate)
from crossmodal.config.sections import (COMMON, CONFIGS, RESUME_MAY_CHANGE, SCHEMAS, DataSection, DistillRunConfig,
                                        DistillSection, LossSection, ModelSection, OptimSection, RunConfig,
                                        ScheduleSection, StudentSection, TaskSection, TeacherRunConfig,
                                        TeacherSection, TrainSection)
from crossmodal.config.typed import Section

__all__ = ["COMMON", "CONFIGS", "DataSection", "DistillRunConfig", "DistillSection", "Field", "LossSection",
           "ModelSection", "OptimSection", "RESUME_MAY_CHANGE", "RunConfig", "SCHEMAS", "ScheduleSection", "Section",
           "StudentSection", "TaskSection", "TeacherRunConfig", "TeacherSection", "TrainSection", "dump_config",
           "flatten", "load_config", "non_negative", "parse_override", "positive", "read_yaml", "validate"]
