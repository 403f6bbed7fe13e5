"""What ships a model: the container build context (pure render functions + templates), and the
part that writes it (`context`) and runs a container engine over it (`engine`)."""
