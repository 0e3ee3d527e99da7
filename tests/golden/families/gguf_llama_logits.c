// Runs a GGUF through llama.cpp's own library and writes the logits at the last prompt position
// for each prompt: gguf_check.py uses it (when a llama.cpp build is at hand) to show that
// llama.cpp loads the converted family files and agrees with the transformers goldens.
//
// Usage: gguf_llama_logits MODEL.gguf OUT.f32 < prompts   (one prompt a line: token ids, spaces)
// OUT.f32: n_prompts * n_vocab little-endian float32, prompt-major. CPU only, one fresh context a
// prompt, the whole prompt in one batch, F32 KV cache, no flash attention.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    static int shown = 0;  // GGML_LOG_LEVEL_CONT continues the previous message
    (void) user;
    if (level != GGML_LOG_LEVEL_CONT) {
        shown = level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR;
    }
    if (shown) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 < prompts\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "failed to load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 1;
    }
    static char line[1 << 16];
    llama_token ids[4096];
    while (fgets(line, sizeof line, stdin)) {
        int n = 0;
        for (char * p = strtok(line, " \t\r\n"); p && n < 4096; p = strtok(NULL, " \t\r\n")) {
            ids[n++] = (llama_token) atoi(p);
        }
        if (n == 0) {
            continue;
        }
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = 512;
        cp.n_batch = 512;
        cp.n_ubatch = 512;
        cp.n_threads = 1;
        cp.n_threads_batch = 1;
        cp.type_k = GGML_TYPE_F32;  // the default F16 cache alone moves these logits by ~1e-2
        cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        struct llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx || llama_decode(ctx, llama_batch_get_one(ids, n)) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
        fwrite(llama_get_logits_ith(ctx, -1), sizeof(float), (size_t) n_vocab, out);
        llama_free(ctx);
    }
    fclose(out);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
