// simulate.c — `steer simulate`: simulated users steer generation, in-process or through a
// running server, against the random and evolution baselines (env/simulate.h).

#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "env/simulate.h"
#include "cmd/args.h"
#include "cmd/commands.h"
#include "util/clock.h"
#include "kernels/kernels.h"

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static void usage(void) {
    printf(
        "usage: steer simulate [options]\n"
        "Simulated users with a hidden preference rate frames (thumbs up/down, one feedback event\n"
        "each) until satisfied: >= 80%% of the next 50 frames liked. Reports the events it took.\n"
        "  --method M       policy | random | evolution | all (default all)\n"
        "  --pref P         class | dark | sample (default class)\n"
        "  --class K        class preference: only class K (default: every class in turn)\n"
        "  --users N        users per class (class) or in all (dark, sample) (default 3)\n"
        "  --budget N       most events per user (default 100)\n"
        "  --population N   evolution's population (default 8)\n"
        "  --pool N         prior frames the policy gradient is estimated on (default 2048)\n"
        "  --seed S         first user seed (default 1)\n"
        "  --model PATH     generator checkpoint (default models/fmnist32c.safetensors)\n"
        "  --eval PATH      evaluator the users judge with (default models/fmnist-eval.safetensors)\n"
        "  --server URL     run through a steer server (ws://host:port/) instead of in-process\n"
        "  --verbose        one line per user\n"
        "  --json           one JSON object per method on stdout\n");
}

int cmd_simulate(int argc, char **argv) {
    const char *model = "models/fmnist32c.safetensors", *eval = "models/fmnist-eval.safetensors";
    const char *method = "all", *pref = "class", *server = NULL;
    long cls = -1, users = 3, budget = 100, population = 8, pool = 2048, seed = 1;
    int verbose = 0, json = 0;
    static const struct option opts[] = {
        {"method", 1, 0, 'm'}, {"pref", 1, 0, 'p'},   {"class", 1, 0, 'k'},
        {"users", 1, 0, 'u'},  {"budget", 1, 0, 'b'}, {"population", 1, 0, 'P'},
        {"pool", 1, 0, 'o'},   {"seed", 1, 0, 's'},   {"model", 1, 0, 'M'},
        {"eval", 1, 0, 'e'},   {"server", 1, 0, 'S'}, {"verbose", 0, 0, 'v'},
        {"json", 0, 0, 'j'},   {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
        switch (o) {
        case 'm': method = optarg; break;
        case 'p': pref = optarg; break;
        case 'k': if (args_long("simulate", optarg, 0, 9, "--class", &cls)) return 2; break;
        case 'u': if (args_long("simulate", optarg, 1, 10000, "--users", &users)) return 2; break;
        case 'b': if (args_long("simulate", optarg, 1, 100000, "--budget", &budget)) return 2; break;
        case 'P': if (args_long("simulate", optarg, 2, 1000, "--population", &population)) return 2; break;
        case 'o': if (args_long("simulate", optarg, 64, 65536, "--pool", &pool)) return 2; break;
        case 's': if (args_long("simulate", optarg, 0, 1L << 40, "--seed", &seed)) return 2; break;
        case 'M': model = optarg; break;
        case 'e': eval = optarg; break;
        case 'S': server = optarg; break;
        case 'v': verbose = 1; break;
        case 'j': json = 1; break;
        case 'h': usage(); return 0;
        default: return 2;
        }
    }
    SimMethod methods[SIM_METHODS];
    int n_methods = 0;
    if (!strcmp(method, "all")) {
        for (int i = 0; i < SIM_METHODS; i++) methods[n_methods++] = (SimMethod)i;
    } else if (sim_method_parse(method, &methods[0])) {
        fprintf(stderr, "steer simulate: --method must be policy, random, evolution or all, not '%s'\n", method);
        return 2;
    } else {
        n_methods = 1;
    }
    SimUserKind kind;
    if (!strcmp(pref, "class")) kind = SIMUSER_LIKES_CLASS;
    else if (!strcmp(pref, "dark")) kind = SIMUSER_LIKES_DARK;
    else if (!strcmp(pref, "sample")) kind = SIMUSER_LIKES_SAMPLE;
    else {
        fprintf(stderr, "steer simulate: --pref must be class, dark or sample, not '%s'\n", pref);
        return 2;
    }
    if (server) {
        for (int i = 0; i < n_methods; i++)
            if (methods[i] != SIM_POLICY) {
                fprintf(stderr, "steer simulate: --server runs the server's own policy only (--method policy)\n");
                return 2;
            }
    }
    char err[512];
    SimWorld w;
    double t0 = clock_now_s();
    if (sim_world_init(&w, model, eval, pool, (uint64_t)seed ^ 0x51a7ull, err, sizeof err)) {
        fprintf(stderr, "steer simulate: %s\n", err);
        sim_world_free(&w);
        return 1;
    }
    if (!json)
        fprintf(stderr, "steer simulate: pool of %ld frames ready in %.1f s\n", pool, clock_now_s() - t0);
    // the users: (class, seed) pairs
    long n_users = kind == SIMUSER_LIKES_CLASS ? (cls >= 0 ? users : 10 * users) : users;
    long *events = malloc((size_t)n_users * sizeof(long));
    if (!events) {
        sim_world_free(&w);
        return 1;
    }
    int rc = 0;
    for (int mi = 0; mi < n_methods && !rc; mi++) {
        long sat = 0, sum = 0;
        double ms = 0;
        for (long k = 0; k < n_users && !rc; k++) {
            SimUserConfig uc;
            simuser_config_default(&uc, kind);
            uc.target_class = kind == SIMUSER_LIKES_CLASS ? (int)(cls >= 0 ? cls : k % 10) : 0;
            uc.seed = (uint64_t)seed + (uint64_t)k;
            if (kind == SIMUSER_LIKES_SAMPLE) // a frame of the pool the user's seed picks
                uc.target_image = w.pool_img + (long)((uc.seed * 7919) % (uint64_t)w.pool.n) *
                                                   CLASSIFIER_IMG * CLASSIFIER_IMG;
            SimUser u;
            long n_cal = w.pool.n < SIMUSER_CALIB_N ? w.pool.n : SIMUSER_CALIB_N;
            if (simuser_init(&u, &uc, &w.eval, w.pool_img, n_cal, err, sizeof err)) {
                fprintf(stderr, "steer simulate: %s\n", err);
                rc = 1;
                simuser_free(&u);
                break;
            }
            SimConfig sc;
            sim_config_default(&sc, methods[mi]);
            sc.budget = budget;
            sc.population = (int)population;
            sc.seed = uc.seed * 1000003ull + (uint64_t)mi;
            SimResult res;
            int e = server ? sim_run_server(&w, &u, &sc, server, &res, err, sizeof err)
                           : sim_run(&w, &u, &sc, &res);
            simuser_free(&u);
            if (e) {
                fprintf(stderr, "steer simulate: %s\n", server ? err : kernels_strerror(e));
                rc = 1;
                break;
            }
            events[k] = res.satisfied ? res.events : LONG_MAX;
            sat += res.satisfied;
            sum += res.events;
            ms += res.update_ms;
            if (verbose)
                fprintf(stderr, "%-9s %s%s user %ld: %s after %ld events (liked %.0f%% of the check)\n",
                        sim_method_name(methods[mi]), pref,
                        kind == SIMUSER_LIKES_CLASS ? (char[]){' ', (char)('0' + uc.target_class), 0} : "",
                        k, res.satisfied ? "satisfied" : "not satisfied", res.events,
                        100 * res.liked_frac);
        }
        if (rc) break;
        qsort(events, (size_t)n_users, sizeof(long), cmp_long);
        long med = events[(n_users - 1) / 2];
        if (json)
            printf("{\"method\":\"%s\",\"pref\":\"%s\",\"users\":%ld,\"satisfied\":%ld,\"budget\":%ld,"
                   "\"median_events\":%s%ld,\"mean_events\":%.2f,\"update_ms\":%.2f%s%s%s}\n",
                   sim_method_name(methods[mi]), pref, n_users, sat, budget,
                   med == LONG_MAX ? "null,\"median_over\":" : "", med == LONG_MAX ? budget : med,
                   (double)sum / n_users, ms / n_users, server ? ",\"server\":\"" : "",
                   server ? server : "", server ? "\"" : "");
        else if (med == LONG_MAX)
            printf("%-9s %s: %ld/%ld satisfied within %ld events; median > %ld\n",
                   sim_method_name(methods[mi]), pref, sat, n_users, budget, budget);
        else
            printf("%-9s %s: %ld/%ld satisfied within %ld events; median %ld events, mean %.1f "
                   "(unsatisfied counted as %ld)\n",
                   sim_method_name(methods[mi]), pref, sat, n_users, budget, med,
                   (double)sum / n_users, budget);
        fflush(stdout);
    }
    free(events);
    sim_world_free(&w);
    return rc;
}
