// tb/tb.h — everything: #include <tb/tb.h>.
#pragma once

#include <tb/core.h>
#include <tb/autograd.h>
#include <tb/ops.h>
#include <tb/cuda.h>
#include <tb/nn.h>
#include <tb/optim.h>
#include <tb/io.h>
#include <tb/data.h>
