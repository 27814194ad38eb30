"""Dataset distillation in feature space by matching training trajectories (Cazenavette et al., CVPR
2022, "Dataset Distillation by Matching Training Trajectories"), measured against honest baselines.

What goes in: the frozen features of a train split and a label per row (the dataset's true labels,
or pseudo labels from the clustering stage, aligned to the store's rows by ``index``). What comes out:
``per_class`` synthetic feature vectors per class and a learned learning rate.

1. **Experts.** ``experts`` copies of a small classifier (linear, or an MLP with one hidden layer)
   are trained on the real features with plain minibatch SGD (``expert_lr``, ``batch_size``) for
   ``expert_epochs`` epochs, each from its own seeded initialisation; their parameters are recorded
   after every epoch (the *trajectories*).
2. **Matching.** The synthetic vectors start as random real vectors of their class (seeded) and the
   synthetic learning rate as ``expert_lr``. Each iteration draws an expert and a start epoch ``t <=
   max_start_epoch``, takes ``syn_steps`` gradient steps on random minibatches of ``syn_batch``
   synthetic vectors from the expert's parameters at ``t``, and measures how far they land from the
   expert's parameters at ``t + expert_epochs_to_match``, relative to how far the expert itself moved:
   ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2``. That loss is differentiated through
   the unrolled steps and the synthetic vectors and learning rate follow SGD with momentum 0.5 (the
   paper's optimiser; ``lr_features``, ``lr_lr``). A classifier's parameters are handled as one flat
   vector (:class:`FlatClassifier`), so the unrolled steps stay differentiable.
3. **Evaluation.** The same classifier is trained from scratch with the same plain SGD on (a) the
   distilled set (at its learned rate), (b) a random real subset of ``per_class`` vectors per class,
   (c) the class centroids (:func:`embedlens.geometry.class_centroids`, one per class) and (d) every
   fit row. Each set's learning rate and epochs are chosen among the candidates of ``eval_lr`` x
   ``eval_epochs`` (``full_lr`` x ``full_epochs`` for (d); (a) keeps its learned rate) on a
   validation part carved from the train split (``val_fraction`` of each class, seeded, stratified),
   which neither the distillation nor any baseline trains on. Then each set is trained with its
   choice over ``eval_seeds`` seeds and its test accuracy (true labels of the test split) is reported
   once, as mean and standard deviation. The distilled set is worth having only when (a) beats (b)
   beyond the seeds' spread: ``mean_a - std_a > mean_b + std_b``. One distillation is evaluated: the
   seeds vary the classifiers trained on it, not the distillation.

The experts' trajectories and the matching state are checkpointed (:mod:`embedlens.checkpoint`); the
experts' checkpoint depends on the data and the expert settings only, so a run with another
``per_class`` or other matching settings reuses it.

All classifiers see the features standardised with the mean and standard deviation of the real fit
rows (part of the classifier, the same for every set); the synthetic vectors are stored back in the
store's feature space, so they can be compared with real images' features directly.

The modules, in the order the stage runs:

- :mod:`~embedlens.distill.settings`: the ``distill:`` config section;
- :mod:`~embedlens.distill.data`: the fit, validation and test rows, with true or pseudo labels;
- :mod:`~embedlens.distill.training`: the small classifier, its SGD training, the flat-parameter view;
- :mod:`~embedlens.distill.matching`: experts, trajectory matching, checkpoints, the saved set;
- :mod:`~embedlens.distill.evaluation`: the four sets, chosen on validation, tested once;
- :mod:`~embedlens.distill.pictures`: each synthetic vector's nearest real images;
- :mod:`~embedlens.distill.summary`: ``distill.json`` and the stage's ``summary.json``.
"""
