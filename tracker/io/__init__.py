"""Video sources and writers, file formats (points, tracks, masks), overlay drawing and atomic writes."""
