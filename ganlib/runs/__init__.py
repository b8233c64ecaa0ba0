"""Run infrastructure: where a run's files live and how they are read (``paths``), atomic writes (``files``),
the checkpoint file format (``checkpoint``), the run lock (``lock``) and the device (``device``)."""
