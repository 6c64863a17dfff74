"""Training verbs on the engine: ``train-teacher`` (:mod:`~crossmodal.train.teacher`), ``distill``
(:mod:`~crossmodal.train.distill_setup` and its task :mod:`~crossmodal.train.distillation`), the run lifecycle
(:mod:`~crossmodal.train.run`) and the exports (:mod:`~crossmodal.train.export`)."""
