"""The examples in the public API's docstrings run and print what they say."""

import doctest

import pytest

import regtool.register
import regtool.resample


@pytest.mark.parametrize("module", [regtool.register, regtool.resample])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
