"""`track bench`: runner, end-to-end stages, measurement (timing, FLOPs, memory) and the report."""
