"""The run engine: training loops and stacks of runs side by side."""
