"""What every training job shares: the Lightning base class, the optimiser and schedule, and
model directories written from a run or a checkpoint."""
