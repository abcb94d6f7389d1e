"""The models the pipeline runs, behind one handler interface (:mod:`models.handler`).

A handler loads its model once per worker, on first use; ``transforms/`` receives it as a plain
callable and never imports this package.
"""
