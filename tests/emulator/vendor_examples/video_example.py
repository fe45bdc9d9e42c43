# The process is identical to image generation, just use the /to-video endpoints.
import requests
import time

API_KEY = "YOUR_API_KEY"
BASE_URL = "https://cerebraform.com"

headers = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json"
}

# Step 1: Submit Task
payload = {
    "prompt": "a peaceful river flowing through a dense forest, 4k, cinematic",
    "duration": 10
}
submit_url = f"{BASE_URL}/ai/v1/to-video"
submit_res = requests.post(submit_url, json=payload, headers=headers)
request_id = submit_res.json()['request_id']
print(f"Video task submitted with ID: {request_id}")

# Step 2: Poll for Status
status_url = f"{BASE_URL}/ai/v1/to-video/status/{request_id}"
while True:
    status_res = requests.get(status_url, headers=headers)
    status_data = status_res.json()
    status = status_data.get('status')
    
    print(f"Current status: {status_data.get('message', 'checking...')}")
    
    if status == 2: break
    if status == -1:
        print("Video task failed. Check the message for details.")
        exit()
    time.sleep(10) # Video may take longer, poll less frequently

# Step 3: Fetch Result
result_url = f"{BASE_URL}/ai/v1/to-video/result/{request_id}"
result_res = requests.get(result_url, headers=headers)
print("\nVideo ready! Result:")
print(result_res.json())
