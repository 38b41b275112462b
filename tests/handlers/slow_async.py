import asyncio


async def handle(req):
    seconds = float(req.body.decode() or 0)
    await asyncio.sleep(seconds)
    return {"body": f"slept {seconds}"}
