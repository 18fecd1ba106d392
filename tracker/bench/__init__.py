"""`track bench`: its configuration, the model-only part, the end-to-end run and the whole run (runner), hedlin's
end-to-end part, the command line, end-to-end stages, measurement (timing, FLOPs, memory) and the report."""
