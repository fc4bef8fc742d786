// tests/test_models.cpp — the model zoo (being written).
#include "gradcheck.h"
