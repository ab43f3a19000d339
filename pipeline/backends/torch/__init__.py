"""PyTorch: eager by default; torch.compile, channels_last, CUDA graphs; DDP under torchrun."""
from pipeline.backends import Framework

FRAMEWORK = Framework(
    name="torch", label="PyTorch", short="torch", module="torch", packages=("torch",),
    loader="torch.utils.data.DataLoader, num_workers worker processes",
    engine="DistributedDataParallel started by torchrun (gloo on a CPU, NCCL on GPUs)")
