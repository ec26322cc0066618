"""The paper's claims at laptop scale: which arms to train, how to judge them, how to report them.

plan     the arms (one question each), the sizes and budgets of a full and a --fast run
stats    Student's t interval of a paired difference (no SciPy)
claims   each claim of the paper as a comparison of arms, judged by one stated rule
report   the results table and plots (the size trend among them)
budget   the plan's time from step times measured here (--estimate), alone and in lockstep
lockstep a seed's arms trained side by side, one teacher forward per batch, each as if alone

`python -m tinyfbi.reproduce` (the entry point) trains the arms and writes what these modules compute.
"""
