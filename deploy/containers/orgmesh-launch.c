/* orgmesh-launch.c — the images' ENTRYPOINT: `orgmesh <service> [args...]`
 * runs /usr/local/bin/orgmesh-<service> with the remaining arguments. It is a
 * C program rather than a shell script because the FROM scratch image has no
 * shell; only the six known names are accepted, so no path can be smuggled in. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define BIN_DIR "/usr/local/bin/orgmesh-"

static const char *const services[] = {
    "accounts", "organizations", "connections", "assets", "partners", "notifier",
};

static int usage(const char *prog) {
    fprintf(stderr, "usage: %s <service> [--migrate-only]\nservices:", prog);
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
        fprintf(stderr, " %s", services[i]);
    fputc('\n', stderr);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(argv[0]);
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++) {
        if (strcmp(argv[1], services[i]) != 0) continue;
        char path[64];
        snprintf(path, sizeof path, "%s%s", BIN_DIR, services[i]);
        argv[1] = path; /* the service sees its own path as argv[0] */
        execv(path, argv + 1);
        perror(path);
        return 127;
    }
    fprintf(stderr, "%s: unknown service \"%s\"\n", argv[0], argv[1]);
    return usage(argv[0]);
}
