"""parmap: a parallel map over worker processes, sync or async.

Timeouts that really stop the work, crashes that fail only their own item,
and results in input order with the exceptions they captured.
"""

from ._api import aimap as aimap
from ._api import apmap as apmap
from ._api import imap as imap
from ._api import pmap as pmap
from ._executor import Executor as Executor
from ._parallel import parallel as parallel
from ._pool import Pool as Pool
from ._results import MapResult as MapResult
from ._results import Outcome as Outcome
from ._results import RemoteError as RemoteError
from ._results import TaskTimeoutError as TaskTimeoutError
from ._results import WorkerCrashedError as WorkerCrashedError
from ._results import WorkerMemoryError as WorkerMemoryError
from ._stats import MapStats as MapStats

__version__ = "1.0.0"

__all__ = (
    "Executor",
    "MapResult",
    "MapStats",
    "Outcome",
    "Pool",
    "RemoteError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerMemoryError",
    "aimap",
    "apmap",
    "imap",
    "parallel",
    "pmap",
)
