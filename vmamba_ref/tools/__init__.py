"""Tools built on the network: the `vmamba` command and what its subcommands run.

| module                    | what                                                             |
|---------------------------|------------------------------------------------------------------|
| `cli`                     | the `vmamba` command: wires up the subcommands below             |
| `demo`                    | `vmamba demo`: the mini VMamba trained on the digits on the CPU  |
| `train`, `train_cli`      | the training loop; `vmamba train` (DDP, checkpoint and resume)   |
| `data`                    | the digits images, split and upscaled                            |
| `bench`, `bench_cli`      | model throughput; `vmamba bench`                                 |
| `flops`, `flops_cli`      | FLOP counting as the VMamba authors count; `vmamba flops`        |
| `erf`, `erf_cli`          | effective receptive fields; `vmamba erf`                         |
| `export`                  | torch.export and ONNX                                            |
| `plots`, `figures`        | matplotlib plots and the docs' figures                           |
| `evidence`                | the measurements behind the tutorial's claims and figures        |
| `kernel_tutorial`         | the kernel tutorial's Numba scan (docs/kernel_tutorial.md)       |

Arrows: these modules import the network (`vmamba_ref.model`, ...) and the contract; nothing in
the network, the oracle or `vmamba_fast` imports them.
"""
