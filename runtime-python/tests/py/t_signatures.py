def one(request):
    return 1


def two(request, context):
    return 2


def default_context(request, context=None):
    return 2 if context is not None else 1


def varargs(*args):
    return len(args)


def none():
    return 0


def three(a, b, c):
    return 3


def kwonly(request, *, flag):
    return 0


class Callable:
    def __call__(self, request):
        return "callable"


callable_object = Callable()
not_callable = 42


def returns_coroutine(request, context):
    async def inner():
        return "from coroutine"

    return inner()


def interpreter(request):
    import sys

    return {"executable": sys.executable, "argv": sys.argv, "prefix": sys.prefix,
            "stdout": type(sys.stdout).__name__, "main": __import__("threading").main_thread().name}


def _decorate(f):
    import functools

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


@_decorate
def decorated(request):
    return "decorated"


def kwonly_default(request, *, flag=False):
    return "kwonly default"


class Handlers:
    def method(self, request, context):
        return "method"


method = Handlers().method
