/* The sandbox process of every pod of the test cluster (containerd's `sandbox_image`): it holds
 * the pod's namespaces open, reaps the zombies it inherits as PID 1, and exits on SIGINT or
 * SIGTERM. Built statically into a one-file image by scripts/kube-cluster.sh, since no image
 * registry can be reached to pull one. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) {
        pause();
    }
}
