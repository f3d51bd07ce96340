"""Every registered method passes the method contract (tests/method_contract.py) on its
tiny recipe."""
from __future__ import annotations

import pytest

from ldm_ext.registry import METHODS
from method_contract import MethodContract

pytestmark = pytest.mark.usefixtures("one_thread")


class TestRegisteredMethod(MethodContract):
    @pytest.fixture(scope="class", params=sorted(METHODS))
    def method_name(self, request) -> str:
        return request.param
