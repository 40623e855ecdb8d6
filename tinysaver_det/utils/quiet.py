import contextlib
import io


@contextlib.contextmanager
def quiet():
    """Silence a library's prints (pycocotools prints progress on every call)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
