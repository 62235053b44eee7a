"""The growth demo and experiments: tasks that ship with scikit-learn and
NumPy (nothing is downloaded), fixed-size baselines, and grown runs."""
