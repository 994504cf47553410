"""Look at finished searches: experiment directories -> DataFrames, plots, sample grids, live samples.

    from analysis import load_experiment_dir, load_experiments, param_importances
    from analysis import plots, samples                      # matplotlib plots; TensorBoard sample grids
    from analysis.checkpoints import load_checkpoint, sample # a kept checkpoint -> images
    from analysis.answer import answer                       # the verdict lines report.html and overview.ipynb open with

Notebooks (parameter cell at the top): overview.ipynb (one experiment), compare.ipynb (several).
Gallery: `streamlit run analysis/gallery.py -- --storage runs`.
"""

from analysis.experiments import (Experiment, NotAnExperiment, find_experiments, is_experiment_dir,
                                  load_experiment_dir, load_experiments, load_study, param_importances)

__all__ = ["Experiment", "NotAnExperiment", "find_experiments", "is_experiment_dir", "load_experiment_dir",
           "load_experiments", "load_study", "param_importances"]
