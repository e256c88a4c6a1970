"""A local stand-in of the EBRAINS services siibra 1.0.1a25 talks to, for tests that must not need the internet.

* ``configuration/`` holds files of the real siibra configuration, unchanged (gzipped), from
  FZJ-INM1-BDA/siibra-configurations at :data:`~ebrains_mirror.mirror.CONFIG_COMMIT` (tag
  :data:`~ebrains_mirror.mirror.CONFIG_TAG`): the spaces MNI152 2009c, MNI Colin 27 and BigBrain, the
  parcellation Julich-Brain 3.1, its statistical (sparse) maps in MNI152 and Colin27, and a BigBrain
  cell-body section feature.
* :func:`~ebrains_mirror.mirror.start_mirror` serves them from a real HTTP server on 127.0.0.1 with every
  ``https://<host>/<path>`` rewritten to ``http://127.0.0.1:<port>/<host>/<path>``, and serves stand-in data
  at those paths in the formats the real providers declare (see :mod:`ebrains_mirror.mirror`).
"""

from .mirror import CONFIG_COMMIT, CONFIG_TAG, Mirror, start_mirror

__all__ = ["CONFIG_COMMIT", "CONFIG_TAG", "Mirror", "start_mirror"]
