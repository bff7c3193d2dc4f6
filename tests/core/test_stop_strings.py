import pytest

from core.errors import AcmError
from core.escapes import stop_strings


@pytest.mark.parametrize("typed, read", [
    ("", ()), ("   ", ()),
    ("\\n\\n", ("\n\n",)),  # one string, the prompt's escapes
    ("done", ("done",)),
    ('"fi\\n", "exit 0"', ("fi\n", "exit 0")),  # several, quoted, separated by commas
    ('"a, b"', ("a, b",)),  # a comma inside quotes is the string's
])
def test_stop_strings_read_as_the_generate_pane_types_them(typed, read):
    assert stop_strings(typed) == read


@pytest.mark.parametrize("typed", ['"a', '"a", 1', '"a", ""', '"a" "b"', '"\\ud800"'])
def test_a_list_of_stop_strings_that_is_not_one_is_one_line(typed):
    with pytest.raises(AcmError, match="stop"):
        stop_strings(typed)
