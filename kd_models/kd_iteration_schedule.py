"""A piecewise-constant schedule over training iterations, as option files write them: rows of (until iteration,
value, ...). Not registered: models import it with ``from .kd_iteration_schedule import IterationSchedule``."""


def is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class IterationSchedule:
    """Rows ``[until, v_1, ..., v_k]``: iteration t takes the values of the first row whose ``until`` is >= t; past
    the last ``until`` the last row holds forever. Iterations count from 1, as BasicSR's ``current_iter``.

    Used by DCKD's history update step s (``[[100000, 1000], [200000, 2000], [300000, 3000]]``) and by the
    progressive patch and batch sizes of ``train.progressive_patches`` (``[[92000, 128, 64], ...]``).

    Args:
        rows (list[list[int]]): The rows, ``until`` strictly increasing, every number a positive int.
        option (str): The option key, for errors.
        names (tuple[str]): What each value of a row is, for errors; a row has ``1 + len(names)`` numbers.
        example (str): A valid value, for errors.
    """

    def __init__(self, rows, option, names, example):
        width = 1 + len(names)
        valid = isinstance(rows, (list, tuple)) and len(rows) > 0 and all(
            isinstance(row, (list, tuple)) and len(row) == width and all(map(is_positive_int, row)) for row in rows)
        if not valid or any(a[0] >= b[0] for a, b in zip(rows, rows[1:])):
            raise ValueError(f'{option} = {rows!r}: use a non-empty list of [until iteration, {", ".join(names)}] rows '
                             f'of positive integers, the untils increasing (e.g. {example})')
        self.rows = [tuple(row) for row in rows]

    def values(self, iteration):
        """The values (a tuple without ``until``) in force at ``iteration``."""
        return next((row for row in self.rows if iteration <= row[0]), self.rows[-1])[1:]
