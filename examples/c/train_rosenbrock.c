/* Train Rosenbrock's function from C with a model compiled ahead of time by spadc.
 *
 *   spadc build examples/rosenbrock.spad -o rosenbrock.o --header rosenbrock.h
 *   cc -O2 -I. examples/c/train_rosenbrock.c rosenbrock.o -lm -o train_rosenbrock
 *   ./train_rosenbrock
 *
 * The program owns every buffer: parameters, gradient, workspace (the tape lives in it), status.
 * Nothing here allocates on the heap, as on a small embedded target. It takes plain SGD steps with
 * the library's train-step kernel and prints the loss as it falls from 6316.2.
 */
#include <stdint.h>
#include <stdio.h>

#include "rosenbrock.h"

#define STEPS 2000
#define LEARNING_RATE 0.0002

static ROSENBROCK_real params[ROSENBROCK_PARAM_COUNT];
static ROSENBROCK_real grads[ROSENBROCK_PARAM_COUNT];
static _Alignas(64) unsigned char workspace[ROSENBROCK_WORKSPACE_GRAD_EXACT + 1];
static double site_data[ROSENBROCK_SITE_DATA_GRAD_EXACT];
static double scores[ROSENBROCK_SCORES_GRAD_EXACT];

int main(void) {
    for (int i = 0; i < ROSENBROCK_PARAM_COUNT; i++)
        params[i] = -1.2; /* the classic start, as the model's initialiser says */
    int64_t stride = 0, status[3] = {0, 0, 0}, stored = 0;
    void *no_inputs[1] = {0};
    ROSENBROCK_real loss = 0;
    for (int step = 0; step <= STEPS; step++) {
        int64_t code = rosenbrock_train_step_exact(params, no_inputs, &stride, 1, 0, 0, 0, (uint64_t)step,
                                                   LEARNING_RATE, &loss, grads, site_data, scores, &stored,
                                                   workspace, status);
        if (code != 0) {
            fprintf(stderr, "run-time check %lld failed\n", (long long)code);
            return 1;
        }
        if (step % 200 == 0)
            printf("step %4d  loss %.6f\n", step, (double)loss);
    }
    return 0;
}
