"""The one exception type the course raises for a student's or instructor's mistake.

Every `SLMLabError` message is a single sentence that says what is wrong and what to do;
the CLI prints it on one line and exits non-zero instead of showing a traceback.
"""


class SLMLabError(Exception):
    """A problem with the user's input (a path, a config, a prompt), explained in one line."""

    def _render_traceback_(self) -> list[str]:  # IPython/Jupyter shows this line instead of a traceback
        return [f"⚠️ {type(self).__name__}: {self}"]
