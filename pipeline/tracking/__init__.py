"""Multi-object tracking: a library of its own (numpy only, no daemon imports), which the daemon runs per
source on the results that come back from the worker.

    from pipeline.tracking import Tracker
    t = Tracker()                              # the daemon's defaults; keyword arguments for its settings
    ids = t.update(boxes, scores, labels)      # boxes [N, 4] x1 y1 x2 y2; scores [N]; labels: N strs or ints
    # ids: int array [N], the track id given to each input row, -1 where none (yet)
"""

from pipeline.tracking.tracker import Tracker, TrackerSettings, iou_matrix

__all__ = ["Tracker", "TrackerSettings", "iou_matrix"]
